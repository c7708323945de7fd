"""gRPC plumbing: health, reflection, error mapping to status codes, tracing of calls."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlops.errors import InvalidArgument, NotFound
from mlops.grpc import GrpcServer, open_channel, raise_typed
from mlops.registry.v1 import registry_pb2, registry_pb2_grpc
from mlops.settings import GrpcServerSettings


class FailingRegistry(registry_pb2_grpc.RegistryServicer):
    async def GetModelVersion(self, request, context):
        if request.model == "boom":
            raise ZeroDivisionError("hidden detail")
        raise NotFound(f"model {request.model!r} has no such version")

    async def ApplyModelSpec(self, request, context):
        raise InvalidArgument("spec.training.epochs: must be at least 1, got 0")


@pytest.fixture
async def server():
    grpc_server = GrpcServer(GrpcServerSettings(port=0))
    grpc_server.add(
        lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(FailingRegistry(), s),
        registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name,
    )
    port = await grpc_server.start()
    await grpc_server.set_serving()
    yield f"127.0.0.1:{port}"
    await grpc_server.stop()


async def test_health_reports_serving_for_the_server_and_each_service(server):
    async with open_channel(server) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mlops.registry.v1.Registry"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(server):
    async with open_channel(server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for reply in stub.ServerReflectionInfo(requests()):
            names = {service.name for service in reply.list_services_response.service}
            break
    assert {"mlops.registry.v1.Registry", "grpc.health.v1.Health"} <= names


async def test_platform_errors_keep_their_status_and_message(server):
    async with open_channel(server) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetModelVersion(registry_pb2.GetModelVersionRequest(model="wine"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == "model 'wine' has no such version"
        with pytest.raises(InvalidArgument, match=r"spec\.training\.epochs"), raise_typed():
            await stub.ApplyModelSpec(registry_pb2.ApplyModelSpecRequest())


async def test_unexpected_errors_become_internal_without_leaking_details(server):
    async with open_channel(server) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetModelVersion(registry_pb2.GetModelVersionRequest(model="boom"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hidden detail" not in caught.value.details()
    assert "internal error in /mlops.registry.v1.Registry/GetModelVersion" in caught.value.details()


async def test_a_taken_port_is_reported(server):
    taken = GrpcServer(GrpcServerSettings(port=int(server.rsplit(":", 1)[1])))
    with pytest.raises(OSError, match="cannot listen"):
        await taken.start()

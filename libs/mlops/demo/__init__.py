"""`make demo`: the platform's main job on the local stack, through its public surfaces."""

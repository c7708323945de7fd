from mlops.cli.main import main

main()

from sf_bridge.cli import main

main()

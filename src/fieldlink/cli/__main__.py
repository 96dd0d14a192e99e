from fieldlink.cli.main import main

main()

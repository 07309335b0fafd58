from tickvault.cli import main

main()

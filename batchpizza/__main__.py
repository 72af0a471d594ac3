from batchpizza.cli import main

main()

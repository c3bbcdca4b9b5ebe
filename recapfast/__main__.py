from recapfast.cli import main

main()

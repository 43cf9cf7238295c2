from editloop.cli import main

main()

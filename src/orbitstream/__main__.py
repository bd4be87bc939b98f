from orbitstream.cli import main

main()

from sqlite_lockprobe.cli import main

main()

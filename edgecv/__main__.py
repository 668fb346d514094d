from edgecv.cli import main

main()

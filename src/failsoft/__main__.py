from failsoft.cli import main

main()

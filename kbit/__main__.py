from kbit.core.cli import main

main()

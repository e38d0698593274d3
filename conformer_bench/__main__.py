from conformer_bench.cli import main

main()

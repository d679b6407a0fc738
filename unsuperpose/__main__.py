from unsuperpose.cli import main

main(prog_name="python -m unsuperpose")

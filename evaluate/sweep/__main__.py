from unsuperpose.evaluate.sweep.cli import main

main(prog_name="python -m unsuperpose.evaluate.sweep")

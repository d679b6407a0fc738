from unsuperpose.evaluate.cli import main

main(prog_name="python -m unsuperpose.evaluate")

from unsuperpose.generate.cli import main

main(prog_name="python -m unsuperpose.generate")

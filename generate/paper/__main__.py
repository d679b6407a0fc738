from unsuperpose.generate.paper.cli import main

main(prog_name="python -m unsuperpose.generate.paper")

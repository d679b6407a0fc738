from unsuperpose.sae.cli import main

main(prog_name="python -m unsuperpose.sae")

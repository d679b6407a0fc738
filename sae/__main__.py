from sae.cli import main

main(prog_name="python -m sae")

from generate.cli import main

main(prog_name="python -m generate")

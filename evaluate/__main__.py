from evaluate.cli import main

main(prog_name="python -m evaluate")

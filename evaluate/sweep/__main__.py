from evaluate.sweep.cli import main

main(prog_name="python -m evaluate.sweep")

from recorder.replay.cli import PROG, main

main(prog_name=PROG)

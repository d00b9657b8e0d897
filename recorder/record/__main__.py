from recorder.record.cli import PROG, main

main(prog_name=PROG)

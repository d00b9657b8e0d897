from recorder.segment.cli import main

main()

from recorder.replay.cli import main

main()

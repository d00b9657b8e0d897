from recorder.record.cli import main

main()

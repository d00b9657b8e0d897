from recorder.sim.cli import main

main()

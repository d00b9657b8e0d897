"""The top floor: the console scripts (record.py: ime-record, replay.py: ime-replay, segments.py: ime-segments,
sim.py: ime-sim), each the options of a program and the packages it puts together; nothing below imports them.
"""

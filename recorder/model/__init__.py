"""What every layer shares: the record (recorder/model/record.py) and the settings (recorder/model/settings.py)."""

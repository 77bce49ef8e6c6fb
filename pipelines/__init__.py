"""What users run: the ``audiotok`` command and one module per job."""

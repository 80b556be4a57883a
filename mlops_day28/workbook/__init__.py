"""The learner's workbook: tasks and their self-checks, and the course's summary checklist."""

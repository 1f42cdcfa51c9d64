"""The HTML report: :func:`charter.report.report.build_report` renders a run folder into one HTML file."""

"""The tracker: stage events → timelines, deadlines, reminders, contact coverage, and the
ministry's view of them (API and dashboard). See docs/tracker.md."""

"""The QuestDB store."""

"""Pure HTTP semantics for downloads: dates, preconditions, byte ranges, Content-Disposition.

Nothing here imports Flask or Werkzeug; every function takes plain strings and returns plain
values, so the rules of RFC 9110 can be tested as tables.
"""

"""sevisflow: a school's SIS changes, captured from PostgreSQL, turned into SEVIS batch uploads."""

__version__ = "0.1.0"

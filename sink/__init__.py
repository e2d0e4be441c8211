"""crm-sink: every e-mail exchanged with customers, logged in the CRM before the MTA hears 250."""

__version__ = "0.1.0"

"""Office 365 calendar sync through Microsoft Graph (issue 15, SPEC 7 "Calendar").

:mod:`token` gets the application's token (msal), :mod:`graph` talks to Graph (httpx),
:mod:`events` maps Graph events to rows, :mod:`store` is the database side, :mod:`sync` the
pass, :mod:`service` the background component ``sink serve`` runs. docs/CALENDAR.md describes
the tables for the CRM side.
"""

"""The operator console: server-rendered pages at ``/console`` over the admin API's logic."""

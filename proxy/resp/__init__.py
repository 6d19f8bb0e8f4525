"""The RESP front end: the wire format (pure), the command table, the socket server."""

"""The lip-sync server's parts: uploads and names (uploads), queued jobs (jobs), live sessions
over WebRTC (rtc) and the page (static/). `serve.py` puts them behind one HTTP API."""

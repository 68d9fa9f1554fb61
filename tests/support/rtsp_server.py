"""A tiny RTSP server for the test suite and the benchmark (GStreamer's, through python3-gi).

Runs under the *system* interpreter (``/usr/bin/python3``), which has ``python3-gi`` and
``gir1.2-gst-rtsp-server-1.0``; the project's virtualenv does not need gi. It serves an
H.264 ``.mp4`` without re-encoding, paced at the file's frame rate by the pipeline clock, and
prints ``READY <port>`` on stdout once it listens.

    /usr/bin/python3 tests/support/rtsp_server.py --file clip.mp4 --port 8554 --path /cam \
        [--user u --password p] [--mount /sub=small.mp4 ...]

``--mount PATH=FILE`` (repeatable) serves more files on the same port, e.g. a camera's main
stream and its sub-stream at two resolutions.
"""

from __future__ import annotations

import argparse
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--file", default=None, help="H.264 .mp4 to serve at --path")
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--path", default="/cam", help="mount point, e.g. /cam")
    ap.add_argument("--user", default=None, help="require basic auth with this user")
    ap.add_argument("--password", default=None)
    ap.add_argument(
        "--shared", action="store_true", help="one pipeline for every client (live-camera-like)"
    )
    ap.add_argument(
        "--mount", action="append", default=[], help="PATH=FILE: another H.264 .mp4 to serve"
    )
    args = ap.parse_args(argv)
    mounts = [(args.path, args.file)] if args.file else []
    mounts += [tuple(m.split("=", 1)) for m in args.mount]
    if not mounts:
        ap.error("nothing to serve: give --file or --mount")

    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer.new()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factories = []
    for path, file in mounts:
        factory = GstRtspServer.RTSPMediaFactory.new()
        location = file.replace("\\", "\\\\").replace('"', '\\"')
        factory.set_launch(
            f'( filesrc location="{location}" ! qtdemux ! h264parse ! rtph264pay name=pay0 '
            "pt=96 config-interval=1 )"
        )
        factory.set_shared(args.shared)
        factories.append((path, factory))

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth.new()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        basic = GstRtspServer.RTSPAuth.make_basic(args.user, args.password or "")
        auth.add_basic(basic, token)
        server.set_auth(auth)
        role = Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
        )
        for _, factory in factories:
            factory.add_role_from_structure(role)

    for path, factory in factories:
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}", flush=True)
        return 1

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY {args.port}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

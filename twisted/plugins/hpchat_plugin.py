"""
twistd plugin for hpchat: imports nothing heavy; C{hpchat.tap} is loaded only when used.
"""

from twisted.application.service import ServiceMaker

hpchatPlugin = ServiceMaker(
    "hpchat",
    "hpchat.tap",
    "hpchat real-time chat node (long-poll HTTP, etcd ownership, NSQ notifications)",
    "hpchat",
)

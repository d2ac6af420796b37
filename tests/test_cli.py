"""
The hpchat command.
"""

from __future__ import annotations

import io
import os
import sys

import jwt
from twisted.trial.unittest import SynchronousTestCase

from hpchat import cli
from tests.test_config import MINIMAL


class TokenCommandTests(SynchronousTestCase):
    def setUp(self):
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(MINIMAL)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def test_printsAVerifiableToken(self):
        """
        hpchat token prints an HS256 JWT for the user with the asked lifetime.
        """
        self.assertEqual(cli.main(["token", "--config", self.path, "--ttl", "60", "alice"]), 0)
        claims = jwt.decode(self.out.getvalue().strip(), "0123456789abcdef0123456789abcdef",
                            algorithms=["HS256"])
        self.assertEqual(claims["sub"], "alice")
        self.assertEqual(claims["exp"] - claims["iat"], 60)

    def test_badUser(self):
        """
        An invalid user id is refused with exit status 2.
        """
        self.assertEqual(cli.main(["token", "--config", self.path, "not valid"]), 2)
        self.assertIn("user ids match", self.err.getvalue())

    def test_badConfig(self):
        """
        A missing config gives one line and exit status 2.
        """
        self.assertEqual(cli.main(["token", "--config", os.path.join("nope", "x.ini"), "a"]), 2)
        self.assertIn("config error", self.err.getvalue())

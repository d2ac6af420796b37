"""
Config parsing: defaults, types, and one clear error naming file, section and key.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from hpchat.config import ConfigError, loadConfig, parseConfig

MINIMAL = """
[node]
id = n1
advertise_url = http://127.0.0.1:8080/
[auth]
secret = 0123456789abcdef0123456789abcdef
"""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigTests(SynchronousTestCase):
    def error(self, text, path="etc/x.ini") -> ConfigError:
        return self.assertRaises(ConfigError, parseConfig, text, path)

    def setUp(self):
        # The default SQLite path depends on systemd's $STATE_DIRECTORY: none here.
        environ = dict(os.environ)
        environ.pop("STATE_DIRECTORY", None)
        self.patch(os, "environ", environ)

    def test_minimalGetsDefaults(self):
        """
        A config with only the required keys gets the documented defaults.
        """
        config = parseConfig(MINIMAL, "/srv/hpchat/etc/hpchat.ini")
        self.assertEqual(config.node.advertise_url, "http://127.0.0.1:8080")
        self.assertEqual(config.node.listen, "tcp:8080:interface=127.0.0.1")
        self.assertEqual((config.chat.groups, config.chat.max_text_chars), (64, 4000))
        self.assertEqual(config.storage.path, os.path.join(os.getcwd(), "var", "hpchat.sqlite3"))
        self.assertEqual((config.storage.batch_size, config.storage.backend), (1000, "sqlite"))
        self.assertFalse(config.auth.dev_login)
        self.assertIsNone(config.cluster)
        self.assertIsNone(config.nsq)
        self.assertEqual(config.chat.stream_heartbeat, 15.0)
        self.assertEqual(parseConfig(MINIMAL + "[chat]\nstream_heartbeat = 2.5\n",
                                     "x.ini").chat.stream_heartbeat, 2.5)

    def test_minFlushIntervalDefault(self):
        """
        The interval of a nearly idle node is 1 ms, or flush_interval when that is shorter.
        """
        storage = parseConfig(MINIMAL, "etc/x.ini").storage
        self.assertEqual((storage.flush_interval, storage.min_flush_interval), (0.005, 0.001))
        storage = parseConfig(MINIMAL + "[storage]\nflush_interval = 0.0007\n",
                              "etc/x.ini").storage
        self.assertEqual(storage.min_flush_interval, 0.0007)

    def test_shippedConfigIsValid(self):
        """
        etc/hpchat.ini parses, has no [cluster] or [nsq], and keeps dev_login off.
        """
        config = loadConfig(os.path.join(REPO, "etc", "hpchat.ini"))
        self.assertIsNone(config.cluster)
        self.assertFalse(config.auth.dev_login)

    def test_sqlitePath(self):
        """
        A relative [storage] path is relative to the ini file's folder, an absolute one is
        kept. Without one the file is $STATE_DIRECTORY/hpchat.sqlite3 when systemd's
        StateDirectory= sets $STATE_DIRECTORY (its first folder), else var/hpchat.sqlite3
        in the working directory.
        """
        def path(storage: str = "", stateDirectory: str | None = None) -> str:
            os.environ.pop("STATE_DIRECTORY", None)
            if stateDirectory is not None:
                os.environ["STATE_DIRECTORY"] = stateDirectory
            text = MINIMAL + (f"[storage]\npath = {storage}\n" if storage else "")
            return parseConfig(text, "/etc/hpchat/hpchat.ini").storage.path

        here = os.path.join(os.getcwd(), "var", "hpchat.sqlite3")
        self.assertEqual(path(), here)
        self.assertEqual(path(stateDirectory=""), here)
        self.assertEqual(path(stateDirectory="/var/lib/hpchat"), "/var/lib/hpchat/hpchat.sqlite3")
        self.assertEqual(path(stateDirectory="/var/lib/hpchat:/var/lib/other"),
                         "/var/lib/hpchat/hpchat.sqlite3")
        self.assertEqual(path("data/chat.sqlite3"), "/etc/hpchat/data/chat.sqlite3")
        self.assertEqual(path("data/chat.sqlite3", "/var/lib/hpchat"),
                         "/etc/hpchat/data/chat.sqlite3")
        self.assertEqual(path("/srv/chat.sqlite3", "/var/lib/hpchat"), "/srv/chat.sqlite3")

    def test_shippedConfigPaths(self):
        """
        The shipped etc/hpchat.ini gives no [storage] path: run from the repository (make
        run) its SQLite file is the repository's var/hpchat.sqlite3, under systemd the state
        folder's; switched to backend = foundationdb it is valid as it stands.
        """
        shipped = os.path.join(REPO, "etc", "hpchat.ini")
        self.patch(os, "getcwd", lambda: REPO)
        with open(shipped) as f:
            text = f.read()
        self.assertEqual(parseConfig(text, shipped).storage.path,
                         os.path.join(REPO, "var", "hpchat.sqlite3"))
        os.environ["STATE_DIRECTORY"] = "/var/lib/hpchat"
        self.assertEqual(parseConfig(text, "/etc/hpchat/hpchat.ini").storage.path,
                         "/var/lib/hpchat/hpchat.sqlite3")
        self.assertIn("\nbackend = sqlite\n", text)
        self.assertIn("\n# cluster_file = /etc/foundationdb/fdb.cluster\n", text)
        fdb = text.replace("\nbackend = sqlite\n", "\nbackend = foundationdb\n").replace(
            "\n# cluster_file = /etc/foundationdb/fdb.cluster\n",
            "\ncluster_file = /etc/foundationdb/fdb.cluster\n")
        storage = parseConfig(fdb, "/etc/hpchat/hpchat.ini").storage
        self.assertEqual((storage.backend, storage.path, storage.cluster_file),
                         ("foundationdb", None, "/etc/foundationdb/fdb.cluster"))

    def test_errorsNameFileSectionAndKey(self):
        """
        Each bad value gives one line naming the file, section and key.
        """
        cases = [
            (MINIMAL.replace("id = n1", "id = bad id"), "[node] id"),
            (MINIMAL + "[chat]\ngroups = many\n", "[chat] groups: must be an integer"),
            (MINIMAL + "[chat]\ngroups = 0\n", "[chat] groups: must be between 1 and 4096"),
            (MINIMAL + "[chat]\ntyping_ttl = soon\n", "[chat] typing_ttl: must be a number"),
            (MINIMAL + "[chat]\nstream_heartbeat = 0\n", "[chat] stream_heartbeat: must be"),
            (MINIMAL + "[chat]\nstream_heartbeat = often\n",
             "[chat] stream_heartbeat: must be a number"),
            (MINIMAL + "[storage]\nbackend = oracle\n", "[storage] backend"),
            (MINIMAL + "[storage]\nbatchsize = 5\n", "[storage] batchsize: is not a known"),
            (MINIMAL + "[storage]\nflush_interval = 0.002\nmin_flush_interval = 0.003\n",
             "[storage] min_flush_interval: must be at most flush_interval (0.002)"),
            (MINIMAL.replace("0123456789abcdef0123456789abcdef", "short"),
             "[auth] secret: must be at least 32 bytes"),
            (MINIMAL.replace("secret = 0123456789abcdef0123456789abcdef", ""),
             "[auth] secret: is required"),
            (MINIMAL + "[bogus]\n", "[bogus]: is not a known section"),
            (MINIMAL.replace("http://127.0.0.1:8080/", "localhost"), "[node] advertise_url"),
            (MINIMAL + "[cluster]\n", "[cluster] etcd: is required"),
            (MINIMAL + "[cluster]\netcd = http://e:2379\nlease_ttl = 1\n",
             "[cluster] lease_ttl"),
            (MINIMAL + "[nsq]\nnsqd_tcp = nohost\n", "[nsq] nsqd_tcp"),
            (MINIMAL.replace("[auth]", "[auth]\ndev_login = maybe"), "[auth] dev_login"),
            ("[node\nid=1", "not a valid ini file"),
        ]
        for text, expected in cases:
            message = str(self.error(text))
            self.assertIn(expected, message, text)
            self.assertTrue(message.startswith("etc/x.ini"), message)
            self.assertNotIn("\n", message)

    def test_listenIsAValidServerEndpoint(self):
        """
        [node] listen is parsed as a Twisted server endpoint without opening anything: a
        port that is not a number or out of range, an unknown argument or endpoint type is
        a one-line error naming [node] listen; TCP and UNIX endpoints are accepted.
        """
        def withListen(value):
            return MINIMAL.replace("[node]", f"[node]\nlisten = {value}")

        cases = [
            ("tcp:notaport", "'notaport'"),
            ("tcp:70000", "port 70000 is not in 0-65535"),
            ("tcp:8080:interfce=127.0.0.1", "unknown argument 'interfce'"),
            ("tpc:8080", "Unknown endpoint type: 'tpc'"),
            ("tcp:8080:backlog=many", "'many'"),
        ]
        for value, expected in cases:
            message = str(self.error(withListen(value)))
            self.assertTrue(message.startswith(f"etc/x.ini [node] listen: is not a valid "
                                               f"endpoint ({value!r})"), message)
            self.assertIn(expected, message)
            self.assertNotIn("\n", message)
        for value in ("tcp:0:interface=127.0.0.1", "tcp:8080", "unix:/run/hpchat.sock"):
            self.assertEqual(parseConfig(withListen(value)).node.listen, value)

    def test_duplicateSectionIsAnError(self):
        """
        A section given twice is reported, not merged silently.
        """
        self.assertIn("not a valid ini file", str(self.error(MINIMAL + "[node]\nid = x\n")))

    def test_secretFile(self):
        """
        secret_file is read relative to the config file; unreadable files are named.
        """
        folder = self.mktemp()
        os.makedirs(folder)
        with open(os.path.join(folder, "secret"), "w") as f:
            f.write("s" * 40 + "\n")
        text = MINIMAL.replace("secret = 0123456789abcdef0123456789abcdef", "secret_file = secret")
        config = parseConfig(text, os.path.join(folder, "hpchat.ini"))
        self.assertEqual(config.auth.secret, b"s" * 40)
        message = str(self.error(text.replace("= secret", "= missing"),
                                 os.path.join(folder, "hpchat.ini")))
        self.assertIn("[auth] secret_file: cannot be read", message)

    def test_missingFile(self):
        """
        A missing config file is named in the error.
        """
        message = str(self.assertRaises(ConfigError, loadConfig, "/nonexistent/hpchat.ini"))
        self.assertIn("/nonexistent/hpchat.ini: cannot read config file", message)

    def test_clusterAndNSQSections(self):
        """
        The optional sections are typed when present.
        """
        config = parseConfig(MINIMAL + "[cluster]\netcd = http://127.0.0.1:2379/\n"
                             "[nsq]\nnsqd_tcp = 127.0.0.1:4150, 127.0.0.1:4250\n")
        self.assertEqual((config.cluster.etcd, config.cluster.prefix, config.cluster.lease_ttl),
                         ("http://127.0.0.1:2379", "/hpchat/", 5))
        self.assertEqual(config.nsq.nsqd_tcp, ("127.0.0.1:4150", "127.0.0.1:4250"))
        self.assertEqual((config.nsq.topic, config.nsq.channel),
                         ("hpchat.notifications", "hpchat"))

    def test_storageBackends(self):
        """
        backend = foundationdb needs cluster_file (relative to the config file) and takes
        key_prefix; path is only for sqlite and cluster_file only for foundationdb; the error
        names the key.
        """
        fdb = MINIMAL + "[storage]\nbackend = foundationdb\n"
        config = parseConfig(fdb + "cluster_file = fdb.cluster\n", "/etc/hpchat/hpchat.ini")
        self.assertEqual((config.storage.backend, config.storage.cluster_file,
                          config.storage.key_prefix, config.storage.path,
                          config.storage.batch_size),
                         ("foundationdb", "/etc/hpchat/fdb.cluster", "hpchat", None, 100))
        config = parseConfig(fdb + "cluster_file = /etc/foundationdb/fdb.cluster\n"
                             "key_prefix = chat.prod-1\n", "/etc/hpchat/hpchat.ini")
        self.assertEqual((config.storage.cluster_file, config.storage.key_prefix),
                         ("/etc/foundationdb/fdb.cluster", "chat.prod-1"))
        sqlite = parseConfig(MINIMAL, "/srv/h/hpchat.ini").storage
        self.assertEqual((sqlite.cluster_file, sqlite.path),
                         (None, os.path.join(os.getcwd(), "var", "hpchat.sqlite3")))
        cases = [
            (fdb, "[storage] cluster_file: is required with backend = foundationdb"),
            (fdb + "cluster_file = c\npath = x.db\n",
             "[storage] path: is only for backend = sqlite"),
            (fdb + "cluster_file = c\nkey_prefix = has space\n", "[storage] key_prefix: must be"),
            (MINIMAL + "[storage]\ncluster_file = c\n",
             "[storage] cluster_file: is only for backend = foundationdb"),
            (MINIMAL + "[storage]\nbackend = sqlite\nkey_prefix = p\n",
             "[storage] key_prefix: is only for backend = foundationdb"),
            (MINIMAL + "[storage]\nbackend = oracle\n",
             "[storage] backend: must be sqlite or postgresql or foundationdb (got 'oracle')"),
            (fdb + "cluster_file = c\nclusterfile = d\n", "[storage] clusterfile: is not a known"),
            (MINIMAL + "[chat]\nmax_text_chars = 20000\n" + fdb[len(MINIMAL):]
             + "cluster_file = c\n", "[chat] max_text_chars: must be at most 16000"),
        ]
        for text, expected in cases:
            message = str(self.error(text))
            self.assertIn(expected, message, text)
            self.assertNotIn("\n", message)
        parseConfig(MINIMAL + "[chat]\nmax_text_chars = 20000\n")

    def test_postgresqlBackend(self):
        """
        backend = postgresql takes a libpq dsn, or dsn_file (relative to the config file) to
        keep a password out of the ini; one of the two is required, the other keys of other
        backends are refused, and a dsn that libpq cannot read is named.
        """
        pg = MINIMAL + "[storage]\nbackend = postgresql\n"
        config = parseConfig(pg + "dsn = host=db.internal dbname=hpchat user=hpchat\n")
        self.assertEqual((config.storage.backend, config.storage.dsn, config.storage.path,
                          config.storage.batch_size),
                         ("postgresql", "host=db.internal dbname=hpchat user=hpchat", None, 1000))
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        with open(os.path.join(folder, "dsn"), "w") as f:
            f.write("host=db password=s3cret dbname=hpchat\n")
        config = parseConfig(pg + "dsn_file = dsn\n", os.path.join(folder, "hpchat.ini"))
        self.assertEqual(config.storage.dsn, "host=db password=s3cret dbname=hpchat")
        cases = [
            (pg, "[storage] dsn: is required with backend = postgresql"),
            (pg + "dsn = host=a\ndsn_file = b\n", "[storage] dsn_file: give either dsn or"),
            (pg + "dsn_file = /nonexistent/dsn\n", "[storage] dsn_file: cannot be read"),
            (pg + "dsn = host=a\npath = x.db\n", "[storage] path: is not an option of backend"),
            (pg + "dsn = host='unterminated\n", "[storage] dsn: is not a valid libpq"),
            (MINIMAL + "[storage]\ndsn = host=a\n", "[storage] dsn: is only for backend = "
                                                     "postgresql"),
        ]
        for text, expected in cases:
            message = str(self.error(text))
            self.assertIn(expected, message, text)
            self.assertNotIn("\n", message)
            self.assertNotIn("s3cret", message)

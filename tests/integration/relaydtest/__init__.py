"""relaydtest: the helpers of relayd's integration tests, one module per
concern. Tests import from here; conftest.py beside this package holds
only pytest's fixtures and hooks (and re-exports the names tests used to
import from it).

  env       where the tree and binaries are, timeouts (RELAYD_BUILDDIR,
            RELAYD_SRCDIR, RELAYD_VALGRIND)
  wait      wait_for (poll until true), holds (stays true)
  ports     free loopback ports, whether ::1 works
  smtp      SMTPConn (raw client: exact bytes, replies), simple() (a small
            message) and smtp_send(), the one helper that sends a message
  spool     reading and planting spool records and segments
  daemon    Relayd (one relayd process: config, start/stop, log, spool,
            status socket), need/run (client programs), run_relayd
  valgrind  relayd under memcheck and the run's report
  certs     CertAuthority, a test CA
  corpus    the shared third-party corpus, message by message
  graph     FakeGraph (tests/fakegraph.py and its control API),
            graph_sections/graph_relayd, the sendMail schema check
  delivery  watching deliveries: log lines, the fake's records, pacing
  auth      users_file entries, test users, AuthConn, start_authd
  load      SMTP client threads for the crash and power-cut tests
  powercut  relayd on tests/powercutfs.py, and those tests' messages
"""

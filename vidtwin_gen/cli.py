"""vidtwin-gen command line."""


def main(argv=None):
    raise SystemExit("vidtwin-gen: no commands yet")

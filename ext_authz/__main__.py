"""``python -m ext_authz`` runs the CLI."""

from ext_authz.cli import main

main()

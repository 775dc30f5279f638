from nst_watch.cli import main

main()

from layerdiffuse_server.cli import main

main()

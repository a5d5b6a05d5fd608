from foldvision.cli import main

main()

from recipe.cli import main

main()
